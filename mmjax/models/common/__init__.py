"""Shared model parts: the engine interface, the generic loader, the Llama-family decoder, rotary, layers, CLIP."""
