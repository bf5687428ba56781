"""ComfyUI nodes of the MAGI-1 pack (thin layer over magi_core)."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
