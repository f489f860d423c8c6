"""`lego serve`: try a model in the browser (gradio, the optional extra `lego[serve]`)."""
