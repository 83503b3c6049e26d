"""Images in: archive download and unpacking, class folders, image checks, the stratified split.

Imports only ``pipeline.core``.
"""
