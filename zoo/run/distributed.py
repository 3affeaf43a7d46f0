"""The end of a distributed run: the process group destroyed while the interpreter is whole, and a peer's death
told apart from other errors."""

from __future__ import annotations


def end_distributed() -> None:
    """Destroys the process group a distributed run set up, while the interpreter is still whole.

    Lightning destroys NCCL groups at exit but leaves gloo ones to interpreter shutdown, where gloo's worker
    threads can still hold tensors whose release needs the GIL, and the process aborts (SIGABRT) after a
    successful run. Called after a run that finished: destroying is local, so no peer is waited for.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def peer_died(exc: BaseException) -> bool:
    """Whether a distributed collective failed because another process is gone (killed, crashed, OOM)."""
    import torch.distributed as dist

    said = str(exc)
    gone = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "has been killed")
    return isinstance(exc, getattr(dist, "DistError", ())) or any(g in said for g in gone)
