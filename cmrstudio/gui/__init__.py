"""The napari/Qt studio. Only this package imports Qt or napari."""
