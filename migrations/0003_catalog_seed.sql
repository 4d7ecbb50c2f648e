-- 0003 — the catalog and its seed data, so a fresh demo has something to
-- sell and something to reject.
--
-- order-api prices orders from orders.products; inventory keeps stock per SKU
-- in inventory.stock. Services never read each other's tables, so the
-- catalog is seeded into both from one list.

CREATE TABLE orders.products (
    sku         text PRIMARY KEY CHECK (sku ~ '^[A-Z0-9][A-Z0-9-]{0,31}$'),
    name        text   NOT NULL,
    price_minor bigint NOT NULL CHECK (price_minor > 0),
    currency    text   NOT NULL CHECK (currency ~ '^[A-Z]{3}$')
);

CREATE TABLE inventory.stock (
    sku                 text PRIMARY KEY CHECK (sku ~ '^[A-Z0-9][A-Z0-9-]{0,31}$'),
    on_hand             bigint NOT NULL CHECK (on_hand >= 0),
    low_stock_threshold bigint NOT NULL DEFAULT 5 CHECK (low_stock_threshold >= 0),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TEMP TABLE seed (sku text, name text, price_minor bigint, on_hand bigint, threshold bigint) ON COMMIT DROP;
INSERT INTO seed VALUES
    ('TEA-EARLGREY',  'Earl Grey tea, 100 g',            650,  500, 20),
    ('TEA-SENCHA',    'Sencha green tea, 100 g',         890,  400, 20),
    ('TEA-ASSAM',     'Assam breakfast tea, 250 g',      990,  300, 20),
    ('TEA-HIMALAYA',  'Himalayan first flush, 50 g',    1450,   12,  5),
    ('COF-ESPRESSO',  'Espresso beans, 1 kg',           2490,  250, 10),
    ('COF-FILTER',    'Filter coffee, 500 g',           1190,  300, 10),
    ('COF-DECAF',     'Decaf beans, 500 g',             1290,    8,  5),
    ('MUG-WHITE',     'White mug, 300 ml',               800,  600, 25),
    ('MUG-TRAVEL',    'Travel mug, steel',              2200,  150, 10),
    ('POT-CERAMIC',   'Ceramic teapot, 1 l',            3500,   40,  5),
    ('POT-CAST-IRON', 'Cast-iron teapot, 0.8 l',        6900,    3,  2),
    ('FLT-PAPER',     'Paper filters, 100 pcs',          350, 1000, 50),
    ('FLT-STEEL',     'Steel mesh filter',              1500,  120, 10),
    ('KTL-ELECTRIC',  'Electric kettle, 1.7 l',         4500,   60,  5),
    ('KTL-GOOSENECK', 'Gooseneck kettle',               7900,    4,  3),
    ('GRD-HAND',      'Hand grinder',                   5200,   30,  5),
    ('GRD-BURR',      'Electric burr grinder',         14900,   10,  3),
    ('SUG-CUBES',     'Sugar cubes, 500 g',              250,  800, 40),
    ('HNY-ACACIA',    'Acacia honey, 250 g',             780,  200, 10),
    ('CUP-ESPRESSO',  'Espresso cups, set of 2',        1800,   90, 10),
    ('BOX-GIFT',      'Gift box',                       2900,   25,  5),
    ('TEA-MATCHA',    'Ceremonial matcha, 30 g',        2600,    0,  5);

INSERT INTO orders.products (sku, name, price_minor, currency)
    SELECT sku, name, price_minor, 'EUR' FROM seed;
INSERT INTO inventory.stock (sku, on_hand, low_stock_threshold)
    SELECT sku, on_hand, threshold FROM seed;

GRANT SELECT, INSERT, UPDATE, DELETE ON orders.products TO orders;
GRANT SELECT, INSERT, UPDATE, DELETE ON inventory.stock TO inventory;
