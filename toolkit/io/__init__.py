"""Inputs and outputs: finding inputs, reading files safely, checking and decoding images, writing results."""
