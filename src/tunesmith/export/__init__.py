"""A finished run out of tunesmith: a Hugging Face directory (`hf`), a GGUF file (`gguf`), pushed to the hub (`hub`).
"""
