"""Per-view input digests: what proves, view by view, that stage two trains on the input the teacher saw.

Stage one records, for every (sample, view), a digest of the exact tensor the teacher was given — the float32 model
input after the pipeline, mixing and normalisation — in ``samples/view_digest`` (``(N, V, 16)`` uint8). Stage two
computes the same digest of every view it builds and refuses a mismatch, so a step that replays differently (its own
random source, an edited function, another torchvision, other CPU kernels) fails loudly whatever the view spec says.

The hash is the sample digest's (:mod:`kdcache.datasets.digest`): XXH3-128 of ``"<dtype><shape>|"`` and the input's
C-order bytes, ~17 GB/s on one core here, so a batch of 256 views at 224×224×3 float32 (154 MB) costs ~9 ms
(BLAKE2b: ~200 ms).
"""

from __future__ import annotations

import numpy as np
import torch

from kdcache.datasets.digest import DIGEST_BYTES, content_digests

VIEW_DIGEST_BYTES = DIGEST_BYTES
VIEW_DIGEST_HASH = "xxh3-128 of '<dtype><shape>|' + the C-order bytes of each view's float32 model input"


def view_digests(inputs: torch.Tensor) -> np.ndarray:
    """``(B, 16)`` uint8: the digest of every view of a batch of model inputs ``(B, ...)``."""
    array = inputs.detach().cpu().contiguous().numpy()
    return content_digests(array, [f"{array.dtype.str}{array.shape[1:]}|".encode()] * len(array))
