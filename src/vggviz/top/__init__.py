"""``vggviz top``: the inputs that excite each channel most, over a folder."""
