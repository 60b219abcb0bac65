"""Execute every notebook against the lake the TRAJLAKE_* settings name; executed copies go to <state_dir>/notebooks."""
from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def main() -> int:
    import nbformat
    from nbclient import NotebookClient
    from rich.console import Console

    sys.path.insert(0, str(REPO))
    from schemas.settings import Settings

    console = Console()
    settings = Settings()
    out = (settings.state_dir / "notebooks").resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    failed = 0
    for path in sorted(HERE.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        with console.status(f"running {path.name} against {settings.lake}…"):
            try:
                NotebookClient(nb, timeout=900, kernel_name="python3",
                               resources={"metadata": {"path": str(REPO)}}).execute(env=env)
            except Exception as exc:  # a failing cell: keep going, report it, exit non-zero
                failed += 1
                console.print(f"[red]✗[/] {path.name}: {str(exc).splitlines()[-1] if str(exc) else exc!r}")
        nbformat.write(nb, out / path.name)
        console.print(f"[green]✓[/] {out / path.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
