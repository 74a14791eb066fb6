"""The ViT, the three methods and what they train, adapter files, and using a trained model.

`from encvit.models import create_backbone, prepare, read_adapter`; names load on first use.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "backbones": ["EMBEDDED", "create_backbone", "create_skeleton", "describe", "weights_hash"],
        "lora": ["QVLoRA", "add_lora", "has_lora", "lora_state_dict", "merge_lora"],
        "methods": [
            "ALL_METHODS",
            "LORA_METHODS",
            "METHODS",
            "count_trainable",
            "is_trained",
            "parameter_table",
            "prepare",
            "trainable_parameters",
        ],
        "adapters": ["AdapterInfo", "load_classifier", "read_adapter", "read_adapter_info", "save_adapter"],
        "peft_format": ["export_peft", "import_peft", "peft_base"],
        "adapt": ["adapt_to_key"],
        "preprocess": ["BatchPreprocess"],
        # `predict` itself stays in encvit.models.predict: a function named like its module would hide the module
        "predict": ["find_runs", "load_runs", "shipped_comparison"],
    },
)
