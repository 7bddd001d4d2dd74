"""The vLLM command line ``serve-model`` builds, without starting vLLM."""

from __future__ import annotations

from branchpoint.sampler.serve import ModelServer, ServeConfig


def test_on_a_cpu_the_weights_are_served_in_float32_unless_the_user_says_otherwise() -> None:
    cmd = ModelServer(ServeConfig(model="m", port=8123)).command("python")
    assert cmd[cmd.index("--dtype") + 1] == "float32"
    assert "--no-enable-chunked-prefill" in cmd
    mine = ModelServer(ServeConfig(model="m", port=8124, extra_args=["--dtype", "bfloat16"]))
    cmd = mine.command("python")
    assert cmd.count("--dtype") == 1 and cmd[cmd.index("--dtype") + 1] == "bfloat16"


def test_on_a_gpu_vllm_chooses_the_dtype() -> None:
    server = ModelServer(ServeConfig(model="m", port=8125))
    server.cpu = False
    assert "--dtype" not in server.command("python")
