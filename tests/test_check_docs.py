"""tools/check_docs: every documented command parses with its program's own
parser, and a stale one is caught with its file and line."""

import pathlib
import textwrap

from simclr_tf.tools import check_docs

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_every_command_in_the_docs_parses():
  report = check_docs.check(check_docs.default_docs(REPO), REPO,
                            log=lambda line: None)
  assert report["failed"] == []
  modules = {command.module for command in report["passed"]}
  # The program, the study and the tools that the docs show.
  assert {"simclr_tf.run", "simclr_tf.tools.study",
          "simclr_tf.tools.linear_probe",
          "simclr_tf.tools.export_saved_model"} <= modules
  readme = [c.text for c in report["passed"] if c.path == "README.md"]
  assert "simclr-tf" in readme  # the main command, after the install
  assert len(report["passed"]) >= 25


_PAGE = textwrap.dedent("""\
    # A page

    ```bash
    pip install -e . && simclr-tf --train_epochs=3   # a comment
    simclr-tf --train_epochz=3
    python -m simclr_tf.run --preset=no_such_preset
    simclr-tf --train_mode=pretrain --dataset=synthetic_shapes \\
        --train_mode=bogus
    python -m simclr_tf.tools.launch_local_cluster --num_workers=2 -- \\
        python -m simclr_tf.run --strategy=multi_worker --no_such_flag=1
    ```

    Shown refused:

    ```
    $ simclr-tf --train_mode=finetune --dataset=cifar10
    error: train_mode=finetune needs --checkpoint (a pretraining model_dir, checkpoint or export); pass --from_scratch to train the supervised baseline from random initialisation.
    $ simclr-tf --train_mode=finetune --dataset=cifar10
    error: a message the program does not print
    $ simclr-tf --train_epochs=2
    error: shown refused, but it parses
    ```

    ```python
    simclr-tf --not_a_command_in_python_code
    ```
    """)


def test_stale_commands_fail_with_their_line(tmp_path):
  page = tmp_path / "page.md"
  page.write_text(_PAGE)
  lines = []
  report = check_docs.check([page], REPO, log=lines.append)
  passed = sorted((c.line, c.text) for c in report["passed"])
  failed = {(c.line, c.text): error for c, error in report["failed"]}
  assert passed == [
      (4, "simclr-tf --train_epochs=3"),
      (9, "python -m simclr_tf.tools.launch_local_cluster --num_workers=2 "
          "-- python -m simclr_tf.run --strategy=multi_worker "
          "--no_such_flag=1"),
      (16, "simclr-tf --train_mode=finetune --dataset=cifar10")]
  assert sorted(line for line, _ in failed) == [5, 6, 7, 9, 18, 20]
  by_line = {line: error for (line, _), error in failed.items()}
  assert "train_epochz" in by_line[5]
  assert "no_such_preset" in by_line[6]
  assert "bogus" in by_line[7]
  assert "no_such_flag" in by_line[9]  # the launcher's worker command
  assert "does not print" in by_line[18] and "needs --checkpoint" in \
      by_line[18]
  assert "it parses" in by_line[20]
  assert [c.argv[0] for c in report["other"]] == ["pip"]
  assert any(line.startswith("FAIL ") and "page.md:5" in line
             for line in lines)


def test_the_tool_exits_non_zero_on_a_stale_command(tmp_path, capsys):
  page = tmp_path / "page.md"
  page.write_text("```bash\nsimclr-tf --train_epochz=3\n```\n")
  assert check_docs.main([str(page)]) == 1
  assert "1 fail" in capsys.readouterr().out
  page.write_text("```bash\nsimclr-tf --train_epochs=3 stray\n```\n")
  assert check_docs.main([str(page)]) == 1
  assert "unexpected arguments ['stray']" in capsys.readouterr().out
  assert check_docs.main([str(tmp_path / "missing.md")]) == 2
  assert "no such file" in capsys.readouterr().err
