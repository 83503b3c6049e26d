"""headstart: reproducible transfer learning for image classifiers.

The package holds all logic; ``stages/`` holds one thin entry point per DVC stage.

Importing it sets the console's defaults (``pipeline.core.console``): they must be in place before
TensorFlow loads, and every stage and command line imports this package first.
"""

from pipeline.core import console

console.quiet_libraries()
