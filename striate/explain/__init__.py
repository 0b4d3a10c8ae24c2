"""Explanation methods and faithfulness scores that need no torch (the service runs them).

`methods` is the registry of every method's name, title and kind; `forward` holds the
gradient-free methods (forward passes only); `scores` the faithfulness scores.
"""
