"""Streamlit helpers shared by the app's pages (the only Streamlit code outside the pages)."""
