"""headstart: reproducible transfer learning for image classifiers.

The package holds all logic; ``stages/`` holds one thin entry point per DVC stage.
"""
