"""Fixed shapes for batched Seed-VC: which tensor sizes a block's forward pass can have.

A block's DiT input is ``[prompt, content]`` per session, padded at the end to the batch's longest:

* the content part (``StreamLayout.target_frames``) and the XLS-R window (``window_16k``) are fixed by
  the session's settings (block, crossfade, contexts), which are part of the batch key;
* the prompt part is fixed by the voice only through a bucket: a session's prompt is the first
  ``prompt_bucket(...)`` samples of the reference, the largest bucket that fits both the session's
  ``max_prompt_length`` and the reference. A batch's padded length is therefore
  ``max(bucket frames) + target_frames``: one of a handful of sizes per layout, whatever the voices'
  exact lengths, so compiled kernels and CUDA graphs are reused instead of rebuilt per voice.

Buckets (seconds): 0.5, 1, 2, 3, 5, 10, 25. The default prompt (3 s, the GUI's 2.5-3 s) and the tests'
2 s are buckets themselves, so the common case loses nothing; steps of about 2x bound what a cut costs
(a prompt keeps more than half of what was asked for); 25 s is the longest reference kept. Asking for
less than the smallest bucket, or a reference shorter than it, keeps the exact length (rare, and a
shape of its own).
"""

from __future__ import annotations

#: prompt lengths a session's prompt is cut to, in seconds (multiples of the 20 ms grid)
PROMPT_BUCKETS_S = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 25.0)


def prompt_bucket(max_prompt_s: float, reference_samples: int, sample_rate: int) -> int:
    """Samples of the reference used as the prompt: the largest bucket that is at most both
    ``max_prompt_s`` and the reference; below the smallest bucket, the exact shorter of the two."""
    wanted = min(reference_samples, round(max_prompt_s * sample_rate))
    fitting = [round(s * sample_rate) for s in PROMPT_BUCKETS_S if round(s * sample_rate) <= wanted]
    return max(fitting) if fitting else wanted
