"""What the teacher is asked: the prompt templates, the image view with its boxes, the encoded inputs, the answer budget and the generation's stopping rule."""
