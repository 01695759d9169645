"""Entry point: python -m maeclip_jax.main --config=configs/maeclip_tiny.py --workdir=DIR

Any config field can be overridden: --config.batch_size=64 --config.model.image.pooling=max.
"""
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter hides our logs

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                lock_config=False)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "init"],
                  "train: train to total_steps (resuming), then evaluate. "
                  "eval: evaluate the latest checkpoint in --workdir. "
                  "init: evaluate the randomly initialised model (a random-features baseline).")
flags.DEFINE_bool("distributed", bool(os.environ.get("MAECLIP_DISTRIBUTED")),
                  "Multi-host: call jax.distributed.initialize. Without the flags below it "
                  "detects the cluster itself (Cloud TPU VMs, SLURM). Env: MAECLIP_DISTRIBUTED=1.")
flags.DEFINE_string("coordinator_address", os.environ.get("MAECLIP_COORDINATOR_ADDRESS"),
                    "host:port of process 0 (implies --distributed). Env: "
                    "MAECLIP_COORDINATOR_ADDRESS.")
flags.DEFINE_integer("num_processes", int(os.environ.get("MAECLIP_NUM_PROCESSES", 0)) or None,
                     "Number of processes. Env: MAECLIP_NUM_PROCESSES.")
flags.DEFINE_integer("process_id", int(os.environ.get("MAECLIP_PROCESS_ID", -1)),
                     "This process's index. Env: MAECLIP_PROCESS_ID.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed(jax) -> None:
    """jax.distributed.initialize from the flags (before any other JAX call touches devices).
    On CPU the processes talk over gloo (how the multi-process tests run on 127.0.0.1)."""
    f = flags.FLAGS
    if not (f.distributed or f.coordinator_address):
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f.coordinator_address,
                               num_processes=f.num_processes,
                               process_id=None if f.process_id < 0 else f.process_id)


class _QuietLibraries:
    """absl logs every library's INFO lines; orbax alone writes dozens per checkpoint. Keep
    their warnings and errors, drop their INFO chatter."""

    def filter(self, record) -> bool:
        return record.levelno >= 30 or "/orbax/" not in record.pathname


def parse_flags(argv):
    """absl's parser, with a misspelt `--config.a.b=...` field reported as one line: the override
    is applied while the flags are parsed, and ml_collections raises a chained KeyError /
    AttributeError (a 50-line traceback) for a field the config lacks."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        text = str(e).replace("\\n", "\n").replace("\\'", "'")
        field = re.search(r"'([^'\n]+)'", text)
        field = field.group(1) if field else text
        hint = re.search(r'Did you mean "([^"]+)"', text)
        args = [a for a in argv[1:] if a.startswith("--config.") and
                re.search(r"\.%s[.=]" % re.escape(field), a.split("=")[0] + "=")]
        if not args:  # not an override (e.g. a bug inside the config file): keep the traceback
            raise
        sys.exit(f"ConfigError: {args[0]}: the config has no "
                 f"field {field!r}" + (f" (did you mean {hint.group(1)!r}?)" if hint else "") +
                 "; the config file's fields are the ones that can be overridden")


def main(argv):
    del argv
    logging.get_absl_handler().addFilter(_QuietLibraries())
    import jax
    import tensorflow as tf
    # tf.data runs on the host only: keep TensorFlow off any accelerator JAX uses.
    tf.config.set_visible_devices([], "GPU")
    initialize_distributed(jax)
    from maeclip_jax import train

    logging.info("JAX %s: %d processes, %d devices (%s)", jax.__version__, jax.process_count(),
                 jax.device_count(), jax.devices()[0].device_kind)
    from maeclip_jax import validation
    from maeclip_jax.data.shards import DataError
    try:
        results = train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir,
                                           flags.FLAGS.mode)
    except (validation.ConfigError, DataError) as e:
        # The message names the field or file and the way out; a traceback adds nothing.
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(f"\n{type(e).__name__}: {e}")
    if jax.process_index() == 0:
        print("\nResults (also in %s):\n%s" % (
            os.path.join(flags.FLAGS.workdir, "results.json"), train.format_table(results)),
            flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
