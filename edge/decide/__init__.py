"""decide: detector (ONNX), tracker and the hold policy; turns frames into decisions, does no I/O."""
