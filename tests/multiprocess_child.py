"""One process of tests/test_multiprocess.py: a few real pretraining steps (gpt_jax.train.pretrain
.run, pipeline data) as process `process_id` of `num_processes`, each with `devices` CPU devices.

    python tests/multiprocess_child.py '<json args>'

args: devices, num_processes, process_id, port (coordinator on 127.0.0.1; unused with one
process), workdir, out; optional: weights (data.pretrain_weights), max_seq_len (model),
kill_at_step (SIGKILL after that step's checkpoint, tests/kill_after_checkpoint.py). Writes `out` (JSON): the logged losses, the eval loss, every batch this
process read (split, step, the mixed-dataset elements = global rows, tokens), which global rows
of the first sharded train batch sit on this process's devices, and parts of the summary.
"""
import json
import os
import sys
from pathlib import Path

ARGS = json.loads(sys.argv[1])
# before jax is imported: the simulated CPU devices of this process
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ARGS['devices']}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/ (helpers)

import jax  # noqa: E402

from gpt_jax import configs  # noqa: E402
from helpers import tiny_config  # noqa: E402

STEPS, BATCH, SEQ = 5, 16, 32


def make_config():
    config = tiny_config(total_steps=STEPS, batch_size=BATCH, seq_len=SEQ, data_source="pipeline",
                         eval_batches=2, checkpoint_every=2, max_to_keep=2)
    config.model.vocab_size = 384
    config.model.max_seq_len = ARGS.get("max_seq_len", 32)
    config.mesh = configs.mesh_config(data=4, fsdp=2, tensor=1)  # 8 devices, FSDP across hosts
    configs.attach_data(config)
    config.data.pretrain_weights = ARGS.get("weights",
                                            {"tiny_shakespeare": 0.7, "web_demo_en": 0.3})
    config.data.loader_threads = 1
    if ARGS["num_processes"] > 1:
        config.distributed.initialize = True
        config.distributed.coordinator_address = f"127.0.0.1:{ARGS['port']}"
        config.distributed.num_processes = ARGS["num_processes"]
        config.distributed.process_id = ARGS["process_id"]
    return config


def gloo_on_loopback():
    """The CPU client with gloo collectives bound to 127.0.0.1 (jax's default factory lets gloo
    pick the host's address); private API, so fall back to the default if it moved."""
    try:
        from jax._src import distributed, xla_bridge
        from jax._src.lib import _jax

        def factory():
            return xla_bridge.make_cpu_client(collectives=_jax.make_gloo_tcp_collectives(
                distributed_client=distributed.global_state.client, hostname="127.0.0.1"))

        xla_bridge.register_backend_factory("cpu", factory, priority=0, fail_quietly=False)
    except Exception as e:  # pragma: no cover - depends on jax internals
        print(f"[child] default gloo transport ({e!r})", file=sys.stderr)


def main():
    config = make_config()
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # before initialize
    from gpt_jax.data import pipeline
    from gpt_jax.metrics import MetricsWriter
    from gpt_jax.train import pretrain

    pretrain.initialize_distributed(config)  # what gpt_jax.main does with distributed.initialize
    if config.distributed.initialize:
        gloo_on_loopback()
    assert jax.process_count() == ARGS["num_processes"], jax.process_count()
    assert jax.process_index() == ARGS["process_id"]
    assert len(jax.devices()) == 8 and len(jax.local_devices()) == ARGS["devices"]

    record = {"process_index": jax.process_index(), "process_count": jax.process_count(),
              "metrics": [], "reads": [], "shard_rows": None}

    write = MetricsWriter.write

    def recording_write(self, step, values):  # every process sees the same (global) metrics
        record["metrics"].append({"step": int(step), **{k: v for k, v in values.items()
                                                       if isinstance(v, (int, float))}})
        return write(self, step, values)

    MetricsWriter.write = recording_write

    on_batch = pipeline.PretrainIterator._on_batch

    def recording_on_batch(self, batch):
        step = self.step - 1  # __next__ has already advanced it
        record["reads"].append({"split": self.split, "step": step, "rows": list(self.rows(step)),
                                "tokens": batch["tokens"].tolist()})
        return on_batch(self, batch)

    pipeline.PretrainIterator._on_batch = recording_on_batch

    shard_batch = pipeline.shard_batch

    def recording_shard_batch(batch, sharding):
        out = shard_batch(batch, sharding)
        if record["shard_rows"] is None:
            record["shard_rows"] = sorted({i for s in out["tokens"].addressable_shards
                                           for i in range(BATCH)[s.index[0]]})
        return out

    pipeline.shard_batch = recording_shard_batch
    if ARGS.get("kill_at_step"):  # SIGKILL right after that step's checkpoint is on disk
        from kill_after_checkpoint import install

        install(int(ARGS["kill_at_step"]))

    summary = pretrain.run(config, ARGS["workdir"])
    record["summary"] = {k: summary[k] for k in ("final_train_loss", "final_eval_loss", "steps",
                                                 "drill_probe", "tokens_by_source")}
    Path(ARGS["out"]).write_text(json.dumps(record))
    print(f"[child {jax.process_index()}] done", flush=True)


if __name__ == "__main__":
    main()
