"""cmrstudio: a studio for synthetic cardiac MRI.

The core (everything outside :mod:`cmrstudio.gui`) is Qt-free and importable
without a display.
"""

__version__ = "0.1.0"

from cmrstudio.errors import CmrError  # noqa: E402
from cmrstudio.case import Case  # noqa: E402

__all__ = ["Case", "CmrError", "__version__"]
