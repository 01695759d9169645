"""The training loop compiles nothing after its first step, and the train state is donated."""
import jax
import numpy as np
from clu import metric_writers

from conftest import tiny_config
from maeclip_jax import checkpoint, sharding, train
from maeclip_jax.data import pipeline
from maeclip_jax.data.tokenizer import get_tokenizer
from maeclip_jax.train_step import input_spec

# The event JAX records once per XLA compilation (jax/_src/dispatch.py BACKEND_COMPILE_EVENT).
COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Counts XLA compilations in this process while registered."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == COMPILE_EVENT:
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def test_loop_compiles_nothing_after_the_first_step_and_donates_the_state(tmp_path):
    config = tiny_config(total_steps=6, log_every_steps=2, checkpoint_every_steps=3)
    config.evals = {}
    tok = get_tokenizer(config.input.tokenizer, config.input.max_text_len)
    config = train.prepare_config(config, tok)
    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:2])
    batch_sh = sharding.batch_sharding(mesh)
    t = train.setup(config, mesh)
    state = t.init(jax.random.PRNGKey(0))
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
            for k, v in input_spec(config).items()}
    compiled = t.step.lower(state, spec).compile()  # as train_and_evaluate does
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), config.checkpoint_every_steps, 2)
    writer = metric_writers.create_default_writer(str(tmp_path), just_logging=True)

    with CompileCounter() as compiles:
        before_step = []   # compilations so far, seen as each step starts
        donated = []       # whether every leaf of the state passed in was deleted by the step

        def step(s, batch):
            before_step.append(compiles.count)
            out = compiled(s, batch)
            donated.append(all(leaf.is_deleted() for leaf in jax.tree.leaves(s)))
            return out

        in_saves = []     # compilations made inside each checkpoint save
        save = ckpt.maybe_save

        def counted_save(*args, **kwargs):
            before = compiles.count
            out = save(*args, **kwargs)
            in_saves.append(compiles.count - before)
            return out
        ckpt.maybe_save = counted_save

        def run(first, state):
            batches = pipeline.train_iterator(config, tok, first, batch_sh)
            return train.train_loop(config, state, step, batches, ckpt, writer, lambda s: {},
                                    1e9, 1e12, first)

        config.total_steps = 3
        state = run(0, state)             # steps 1-3: logs at 2, checkpoints at 3
        after_first_run = compiles.count
        config.total_steps = 6
        state = run(3, state)             # a second run of the loop: steps 4-6
        after_second_run = compiles.count
    ckpt.close()

    assert len(before_step) == 6 and all(donated), donated
    # The step is compiled ahead of time: no step, log or metric read compiles anything. The
    # only compilations of the whole loop are orbax's, once, in its first save (per-array copy
    # programs, cached after); a second run of the loop (steps, logs, a save) compiles nothing.
    assert len(in_saves) == 2 and in_saves[1] == 0, in_saves
    assert after_first_run == in_saves[0], (after_first_run, in_saves)
    assert before_step[:3] == [0, 0, 0], before_step
    assert before_step[3:] == [after_first_run] * 3 and after_second_run == after_first_run, (
        before_step, after_second_run)
    assert int(jax.device_get(state["step"])) == 6
    assert np.isfinite(float(jax.device_get(state["params"]["logit_scale"])))


def test_the_counter_sees_a_compilation():
    """The check above can fail: a new input shape makes a jitted function compile again."""
    f = jax.jit(lambda x: x * 2 + 1)
    with CompileCounter() as compiles:
        f(np.ones(3, np.float32))
        f(np.ones(3, np.float32))
        assert compiles.count == 1
        f(np.ones(4, np.float32))
        assert compiles.count == 2
