"""Small mechanisms every layer may use (atomic files, the per-machine kernel choice): this
package imports nothing else of sketch_tf, so data/, models/, export/ and train/ can all
depend on it."""
