"""SketchZooms: multi-view zoom descriptors for points on line drawings."""
