"""`vggviz explain`: what the model predicts, and where in the photo its evidence lies."""
