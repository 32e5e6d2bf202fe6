"""Frame selection: QUESTS entropy selection, random baseline, frame filters."""
