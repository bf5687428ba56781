"""`plan_for`: a sampling plan from the few settings a test varies (the rest: SamplingSettings' defaults)."""
from magi_core.sampling import make_plan
from magi_core.settings import SamplingSettings


def plan_for(n_chunks, steps, prefix_latents=0, cfg_number=3, **settings):
    return make_plan(SamplingSettings(steps=steps, cfg_number=cfg_number, **settings), n_chunks, prefix_latents)
