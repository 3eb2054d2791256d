"""Not an importable package: this folder is the Triton model repository and its launcher (run by path).

The repository root is on the development sys.path, so without this file Python would import the folder as a
namespace package named `triton`, and torch (via transformers) would mistake it for the OpenAI Triton compiler.
Raising ImportError makes `import triton` behave exactly as when the compiler is not installed.
"""

raise ImportError("triton/ in this repository is the Triton model repository, not the OpenAI Triton compiler")
