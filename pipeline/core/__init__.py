"""The ground floor: typed params, user errors, atomic file writes, figures, progress bars, console and runtime setup.

Every other sub-package may import these modules; they import none of the others.
"""
