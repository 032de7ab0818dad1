"""Import and export of a network's weights: NumPy `.npz`, safetensors and PyTorch state_dicts.

`import_file` reads a weights file, checks it against the model spec and
commits it, cut into a plan's partitions, to the shared store at step 0.
`export_file` assembles a model's latest stored partitions into whole layers
and writes them. `naming` documents the tensor names both accept.
"""

from mpnn_async.interchange.exporter import (
    ExportResult,
    default_naming,
    export_file,
    tensors_from_parameters,
)
from mpnn_async.interchange.formats import (
    FileFormat,
    TensorFile,
    detect_format,
    read_tensors,
    write_tensors,
)
from mpnn_async.interchange.importer import (
    ImportResult,
    import_file,
    import_parameters,
    parameters_from_tensors,
)
from mpnn_async.interchange.naming import (
    LayerTensors,
    Naming,
    layer_tensor_names,
    map_tensor_names,
    torch_sequential_text,
)
from mpnn_async.interchange.stored import (
    StoredModel,
    read_stored_model,
    read_stored_plan,
)

__all__ = [
    "ExportResult",
    "FileFormat",
    "ImportResult",
    "LayerTensors",
    "Naming",
    "StoredModel",
    "TensorFile",
    "default_naming",
    "detect_format",
    "export_file",
    "import_file",
    "import_parameters",
    "layer_tensor_names",
    "map_tensor_names",
    "parameters_from_tensors",
    "read_stored_model",
    "read_stored_plan",
    "read_tensors",
    "tensors_from_parameters",
    "torch_sequential_text",
    "write_tensors",
]
