//! The inventory role: keyed per-product state fed by product updates and order lines.
