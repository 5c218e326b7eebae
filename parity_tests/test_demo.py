"""The README's main command (the conversion demo) runs and reports parity."""

import pytest

from parity_tests.tolerances import F32_REL
from r34_flax import demo


@pytest.mark.parametrize("preset", ["tiny", "tiny_bottleneck"])  # the smallest BasicBlock and Bottleneck bodies
def test_demo_reports_matching_logits(preset: str, capsys: pytest.CaptureFixture) -> None:
    assert demo.main(["--preset", preset, "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "round trip bit-identical           True" in out
    assert "logits argmax equal                True" in out
    result = demo.run(preset, 32, 2, False, 0)
    assert result["logits rel"] <= F32_REL


def test_demo_rejects_unknown_preset(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        demo.main(["--preset", "resnet51"])
    assert e.value.code == 2
    assert "invalid choice: 'resnet51'" in capsys.readouterr().err
