"""Model lifecycle (the manager), the device threads that host engines, devices."""
