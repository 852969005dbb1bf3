"""data/compliance"""
