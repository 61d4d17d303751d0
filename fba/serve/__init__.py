"""``fba serve``: the model behind Triton Inference Server (docs/serving.md).

requests.py (one request to checked model inputs), model.py (the warm model and its contract), triton_model.py
(Triton's Python backend model), repository.py (the model repository), server.py (the Triton process),
command.py (the command's work).
"""
