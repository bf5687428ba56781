"""ComfyUI nodes of the MAGI-1 pack (thin layer over magi_core).

Modules without ComfyUI imports hold the logic (model_files, choices, conditioning, latents, sampler_settings,
handles, loading, generation, multigpu, previews); the *_nodes modules, chunk_progress, memory, types and routes
are the ComfyUI side. Node ids and widget order are stable: new widgets are only ever appended.
"""
try:
    import comfy_api.latest  # noqa: F401  (only inside ComfyUI)
except ImportError:  # imported outside ComfyUI (pytest imports the repo root package): no nodes
    NODE_CLASS_MAPPINGS: dict = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict = {}
else:
    from . import loader_nodes, routes, sampler_nodes, text_nodes, vae_nodes, video_nodes
    from .types import install_example_inputs, register_folders

    register_folders()
    install_example_inputs()
    routes.register()

    NODES = [*loader_nodes.NODES, *text_nodes.NODES, *vae_nodes.NODES, *sampler_nodes.NODES, *video_nodes.NODES]
    NODE_CLASS_MAPPINGS = {n.GET_SCHEMA().node_id: n for n in NODES}
    NODE_DISPLAY_NAME_MAPPINGS = {k: n.GET_SCHEMA().display_name for k, n in NODE_CLASS_MAPPINGS.items()}

