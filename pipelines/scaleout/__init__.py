"""Scale-out: a scene's work as parts (strips of tile rows, or whole scenes), their executors and the merge."""
