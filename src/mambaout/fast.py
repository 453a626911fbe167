"""``mambaout.fast`` is :mod:`mambaout.models.fast` (``--fast`` and the fused CPU inference path), under the name
it had before the fast path moved beside the model; one module object, so settings and patches apply to both."""
import sys

from .models import fast as _fast

sys.modules[__name__] = _fast
