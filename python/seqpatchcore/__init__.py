"""seqpatchcore: bounded-memory PatchCore anomaly detection for industrial surfaces.

    from seqpatchcore import SequentialPatchCore
    model = SequentialPatchCore(capacity=6676).fit(train_image_paths)
    maps, scores = model.anomaly_maps(test_image_paths)
"""

import atexit
import logging

__version__ = "0.1.0"

from seqpatchcore import _C  # noqa: E402

# C++ messages go through Python logging under "seqpatchcore._C"; quiet unless configured.
_core_logger = logging.getLogger("seqpatchcore._C")
_C.set_log_sink(lambda level, message: _core_logger.log(level, message))
# The sink holds a Python callable; drop it while the interpreter can still release it.
atexit.register(_C.set_log_sink, None)
logging.getLogger("seqpatchcore").addHandler(logging.NullHandler())

from seqpatchcore.model import SequentialPatchCore  # noqa: E402

__all__ = ["SequentialPatchCore", "__version__"]
