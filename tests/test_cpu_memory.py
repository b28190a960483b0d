"""glibc's allocator keeping freed memory (``train.keep_freed_memory``), measured as
page faults in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from verirl.cpu_memory import glibc

# a step-like pattern, 40 times: eight tensors of 1-10 MiB (their sizes changing from
# round to round, as a batch's length does) written and held together, then freed;
# print the minor page faults of the loop
FAULTS = """
import json, resource, sys, torch
if sys.argv[1] == "keep":
    from verirl.cpu_memory import keep_freed_memory
    assert keep_freed_memory()
def touch(r=0):
    held = [torch.ones((k << 18) * (4 + r % 5) // 4) for k in range(1, 9)]
    return sum(float(x[-1]) for x in held)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for r in range(40):
    touch(r)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not glibc(), reason="not Linux with glibc: there is no mallopt to call")
@pytest.mark.skipif(bool(os.environ.get("LD_PRELOAD")) or any(k.startswith("MALLOC_") for k in os.environ),
                    reason="the allocator is preloaded or tuned through MALLOC_* here: the default is not glibc's")
def test_kept_memory_is_reused_without_page_faults():
    """By default the freed tensors' memory (36-72 MiB a round) goes back to the OS
    and later rounds fault on its pages again (~115,000 faults here); with the
    setting, later rounds reuse the pages the largest round touched (~9,500: the heap
    growing once)."""
    default, kept = _faults("default"), _faults("keep")
    assert default > 40_000
    assert kept < default / 5
