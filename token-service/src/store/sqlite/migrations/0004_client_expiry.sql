-- When the client first obtained a grant (NULL: never), and since when none of its
-- grants is alive (NULL: one is, or it never had one). Registrations expire by them.
ALTER TABLE clients ADD COLUMN granted_at INTEGER;
ALTER TABLE clients ADD COLUMN idle_since INTEGER;
UPDATE clients SET granted_at = created_at
    WHERE EXISTS (SELECT 1 FROM grants g WHERE g.client_id = clients.client_id)
       OR EXISTS (SELECT 1 FROM consents c WHERE c.client_id = clients.client_id);
CREATE INDEX clients_unused ON clients(created_at) WHERE granted_at IS NULL;
CREATE INDEX grants_client ON grants(client_id);
