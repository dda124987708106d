"""Torch-free foundation: vocabulary, values, errors, files, folders, images, inputs, drawing."""
