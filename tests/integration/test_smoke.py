from .conftest import pipeline


def test_fan_out_join_and_shell_run_to_success(cluster):
    result = cluster.run(
        pipeline(
            "smoke",
            {"id": "items", "uses": "noop", "params": {"output": [1, 2, 3, 4]}},
            {"id": "square", "uses": "test.square", "needs": ["items"], "for_each": "items"},
            {"id": "other", "uses": "noop", "params": {"output": "b"}},
            {"id": "join", "uses": "test.record", "needs": ["square", "other"]},
            {"id": "hello", "run": ["echo", "hello"], "needs": ["join"]},
        )
    )
    assert result.status == "succeeded", result.stage_results
    assert result.outputs["square"] == [1, 4, 9, 16]
    assert result.outputs["join"] == {"stage": "join", "inputs": ["other", "square"]}
    assert result.outputs["hello"]["stdout"] == "hello"
