"""What each change event means: new posts fan out, profile edits cascade."""
