"""The library example of docs/library.md runs as a user would run it: as a script,
in a fresh process, from a directory outside the checkout."""

import os
import re
import subprocess
import sys

import command_line

MARKER = "<!-- test:library-example -->"


def readme_example():
  with open(os.path.join(command_line.REPO, "docs", "library.md")) as handle:
    text = handle.read()
  assert MARKER in text, "docs/library.md lost its library example marker"
  after = text.split(MARKER, 1)[1]
  match = re.match(r"\s*```python\n(.*?)```", after, re.S)
  assert match, "no python block after the library example marker"
  return match.group(1)


def test_readme_library_example_pretrains_on_user_images(tmp_path):
  script = tmp_path / "example.py"
  script.write_text(readme_example() + """
import math
losses = history.history["contrast_loss"]
assert len(losses) == 2 and all(math.isfinite(x) for x in losses), losses
assert tuple(features.shape) == (4, 128), features.shape
assert isinstance(model, models.SimCLRModel)
print("EXAMPLE-OK")
""")
  result = subprocess.run(
      [sys.executable, str(script)], cwd=tmp_path, capture_output=True,
      text=True, timeout=600,
      env=dict(os.environ, PYTHONPATH=command_line.REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "EXAMPLE-OK" in result.stdout
  assert "contrastive loss per epoch:" in result.stdout
