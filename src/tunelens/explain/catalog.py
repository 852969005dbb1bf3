"""The names of the attribution methods, feature granularities and baselines.

This is the registry the study schema, the CLI and the docs take their choices from. It imports
nothing, so validating a config never loads torch; each method class registers itself under its
name in the module listed here (:func:`tunelens.explain.base.register` refuses a name that is not
listed, and a test checks every listed name has its class).
"""

from __future__ import annotations

# name -> (module that implements it, one line on what it computes)
METHODS: dict[str, tuple[str, str]] = {
    "occlusion": ("tunelens.explain.estimators", "leave one feature out"),
    "shapley": ("tunelens.explain.estimators", "Shapley values by permutation sampling"),
    "shapley_exact": ("tunelens.explain.estimators", "exact Shapley values (at most 14 features)"),
    "lime": ("tunelens.explain.estimators", "LIME: a weighted linear fit to random masks"),
    "kernel_shap": ("tunelens.explain.estimators", "KernelSHAP: LIME with the Shapley kernel"),
    "saliency": ("tunelens.explain.gradients", "gradient norm of the target w.r.t. embeddings"),
    "input_x_gradient": ("tunelens.explain.gradients", "embedding times its gradient"),
    "integrated_gradients": ("tunelens.explain.gradients", "integrated gradients from a baseline"),
    "attention": ("tunelens.explain.views", "attention paid by the target positions"),
    "rollout": ("tunelens.explain.views", "attention rollout through the layers"),
}
PERTURBATION_METHODS = ("occlusion", "shapley", "shapley_exact", "lime", "kernel_shap")

GRANULARITIES: dict[str, str] = {
    "token": "one feature per token",
    "word": "sub-words joined by whitespace",
    "span": "the tagged categories' spans",
}
BASELINES: dict[str, str] = {
    "auto": "unk if the tokenizer has one, else a pad that is not EOS, else a space",
    "unk": "the unknown token", "pad": "the padding token", "mask": "the mask token",
    "delete": "remove the feature", "sample": "random tokens, averaged over trials",
}

