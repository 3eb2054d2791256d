"""Code shared by the python-backend models of triton/model_repo, and the backend registry.

Models import it normally (it is installed in the Triton environment and images); nothing is loaded by file path.
Modules that talk to Triton import `triton_python_backend_utils`, which exists only inside the python-backend stub;
`registry`, `model_config`, `params` and `lru` import nothing of Triton and are usable anywhere.
"""
