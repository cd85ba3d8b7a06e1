"""The progress callback every long codec call accepts (one definition for the whole codec).

``progress(fraction)`` is called with a fraction of the work done, 0..1, non-decreasing, and
1.0 at the end; None means no reports. A callback may raise to stop the work (the service's
worker does so when its job is cancelled); the exception reaches the caller unchanged.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[float], None] | None
