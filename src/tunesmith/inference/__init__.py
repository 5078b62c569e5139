"""Using a model: generation from one prompt, a file of prompts or a conversation (`generation`, `generate_file`), the
batched decoding engine under them (`decoding`), labelling rows with a classifier (`predict`), and generated text
scored against references (`text_metrics`).
"""
